"""What every saved segmentation says about how it was made: the model, its weights' sha256, the project version,
the prompts (boxes, corrections) and whether a person edited the mask afterwards.

DICOM SEG carries it in its algorithm identification (:mod:`.dicomseg`), ``.seg.nrrd`` in segment tags, NIfTI and
the other formats in a JSON sidecar beside the label (``NAME.json``: ``liver.nii.gz`` -> ``liver.json``), written
through the same atomic writer.  Nothing here holds patient data: the prompts are voxel indices.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

NOTICE = "Made with the help of a segmentation model (MedSAMSlicer); for research use, not for diagnosis."


def project_version() -> str:
    from .. import __version__

    return str(__version__)


@dataclass
class Provenance:
    model: str
    weights_sha256: str
    version: str = field(default_factory=project_version)
    prompts: dict = field(default_factory=dict)  # e.g. {"key_boxes": {"12": "[x0, y0, x1, y1]"}, "mode": "3d"}
    edited_after: bool = False  # a person changed the mask after the model made it
    notice: str = NOTICE

    def as_dict(self) -> dict:
        return {"generator": "MedSAMSlicer", **asdict(self)}

    def as_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, sort_keys=True, default=str)

    def segment_tags(self) -> dict[str, str]:
        """Tags for a ``.seg.nrrd`` segment (Slicer keeps unknown segment tags and shows them in the tag list)."""
        return {"MedSAMSlicer.Model": self.model, "MedSAMSlicer.WeightsSha256": self.weights_sha256,
                "MedSAMSlicer.Version": self.version, "MedSAMSlicer.EditedAfter": str(self.edited_after).lower(),
                "MedSAMSlicer.Prompts": json.dumps(self.prompts, sort_keys=True, default=str),
                "MedSAMSlicer.Notice": self.notice}


def sidecar_path(label: str | Path) -> Path:
    """``liver.nii.gz`` -> ``liver.json`` (BIDS-like: the sidecar shares the name without the extension)."""
    label = Path(label)
    name = label.name
    for ext in (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha", ".npz"):
        if name.endswith(ext):
            return label.with_name(name[: -len(ext)] + ".json")
    return label.with_name(name + ".json")


def write_sidecar(label: str | Path, provenance: Provenance) -> Path:
    from ..atomic import atomic_path
    from ..errors import OutputError

    target = sidecar_path(label)

    def check(temp: Path) -> None:
        if json.loads(temp.read_text())["weights_sha256"] != provenance.weights_sha256:
            raise OutputError(f"cannot write {target}: the written sidecar does not read back")

    with atomic_path(target, suffix=".json", verify=check) as temp:
        temp.write_text(provenance.as_json() + "\n")
    return target
