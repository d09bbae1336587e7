"""The annotation-time study: session logs, the study report, the simulated study."""
