// MedSAMSlicer's keyboard shortcuts in the browser: every Ctrl+Alt+key goes to the server's "on_key" trigger,
// which looks it up in the Slicer panel's table (MedSAMSlicerLogic/shortcuts.py) and ignores the others.
window.addEventListener('keydown', (e) => {
  if (!(e.ctrlKey && e.altKey) || ['Control', 'Alt', 'Shift'].includes(e.key) || !window.trame) return;
  e.preventDefault();
  window.trame.trigger('on_key', [e.ctrlKey, e.altKey, e.shiftKey, e.code]);
});
