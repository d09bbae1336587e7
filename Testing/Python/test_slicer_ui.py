"""The extension's files fit together: the .ui file is valid and has every widget the panel uses, CMake lists every
Python file and resource, the Extension Index entry follows Slicer's catalog schema, the icon is a 128x128 PNG."""

import json
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "MedSAMSlicer"
UI_FILE = MODULE / "Resources" / "UI" / "MedSAMSlicer.ui"


def ui_widgets() -> dict[str, str]:
    root = ElementTree.parse(UI_FILE).getroot()  # raises on invalid XML
    return {w.get("name"): w.get("class") for w in root.iter("widget")}


def test_ui_is_valid_xml_with_every_widget_the_code_uses():
    widgets = ui_widgets()
    source = (MODULE / "MedSAMSlicer.py").read_text()
    used = set(re.findall(r"self\.ui\.(\w+)", source))
    assert len(used) > 20
    assert sorted(used - set(widgets)) == []
    assert widgets["MedSAMSlicer"] == "qMRMLWidget"  # setMRMLScene is called on the top widget


def test_ui_connects_the_scene_to_every_mrml_widget():
    root = ElementTree.parse(UI_FILE).getroot()
    mrml = {name for name, cls in ui_widgets().items() if cls.startswith("qMRML") and name != "MedSAMSlicer"}
    connected = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    assert mrml and mrml == connected
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    assert {cls for cls in ui_widgets().values() if not cls.startswith("Q")} <= declared


def cmake_list(name: str) -> list[str]:
    text = (MODULE / "CMakeLists.txt").read_text()
    block = re.search(rf"set\({name}\n(.*?)\n\s*\)", text, re.S).group(1)
    return [line.strip().replace("${MODULE_NAME}", "MedSAMSlicer") for line in block.splitlines() if line.strip()]


def test_cmake_lists_every_python_file_and_resource():
    scripts = set(cmake_list("MODULE_PYTHON_SCRIPTS"))
    packages = ("MedSAMSlicerLogic", "MedSAMSlicerLib", "MedSAMSlicerEffect")
    on_disk = {"MedSAMSlicer.py"} | {str(p.relative_to(MODULE)) for package in packages
                                     for p in (MODULE / package).rglob("*.py")}  # subpackages too
    assert sorted(on_disk - scripts) == [], "add these to MODULE_PYTHON_SCRIPTS"
    assert sorted(s for s in scripts if not (MODULE / s).is_file()) == []
    resources = cmake_list("MODULE_PYTHON_RESOURCES")
    assert all((MODULE / r).is_file() for r in resources) and "Resources/UI/MedSAMSlicer.ui" in resources
    text = (MODULE / "CMakeLists.txt").read_text()
    assert "WITH_GENERIC_TESTS" in text and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    assert (MODULE / "../model_weights/manifest.json").resolve().is_file()


def test_manifest_is_installed_where_weights_py_looks():
    """CMake puts the manifest in <scripted modules>/model_weights, i.e. beside the MedSAMSlicerLib folder."""
    from MedSAMSlicerLib.engine import weights

    text = (MODULE / "CMakeLists.txt").read_text()
    assert "${Slicer_QTSCRIPTEDMODULES_LIB_DIR}/model_weights/manifest.json" in text
    assert "DESTINATION ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}/model_weights" in text
    package = Path(weights.__file__).resolve().parents[1]  # MedSAMSlicerLib/
    assert package.parent / "model_weights" in weights._weights_dir_candidates()


def test_extension_cmake_and_index_entry():
    text = (REPO / "CMakeLists.txt").read_text()
    for needed in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                   "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS", "find_package(Slicer 5.10 REQUIRED)",
                   "add_subdirectory(MedSAMSlicer)", "include(${Slicer_EXTENSION_CPACK})"):
        assert needed in text
    entry = json.loads((REPO / "Resources" / "MedSAMSlicer.json").read_text())
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
               "dicom_support_rule", "build_subdirectory", "enabled", "tier"}  # catalog schema v1.0.2
    assert {"$schema", "category", "scm_url"} <= set(entry) <= allowed
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.2.json#")
    assert isinstance(entry["build_dependencies"], list) and 1 <= entry["tier"] <= 5


def test_icon_is_a_128_pixel_png():
    from PIL import Image

    for path in (MODULE / "Resources" / "Icons" / "MedSAMSlicer.png", REPO / "Resources" / "Icons" / "MedSAMSlicer.png"):
        with Image.open(path) as icon:
            assert icon.format == "PNG" and icon.size == (128, 128)


def test_every_parameter_name_in_the_ui_is_a_typed_field_with_a_gui_connector():
    """connectGui binds each widget whose SlicerParameterName names a field of the parameter node class (S3).  A
    name without a field, or a widget Slicer's connectors cannot bind to that type, would leave a setting unsaved."""
    import ast

    tree = ast.parse((MODULE / "MedSAMSlicer.py").read_text())
    wrapper = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "MedSAMSlicerParameterNode")
    fields = {n.target.id: ast.unparse(n.annotation) for n in wrapper.body if isinstance(n, ast.AnnAssign)}
    bound = {}
    for widget in ElementTree.parse(UI_FILE).getroot().iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.findtext("string")] = widget.get("class")
    assert len(bound) >= 6 and set(bound) <= set(fields), (bound, fields)
    # Which Qt widget can carry which type (Slicer's guiConnectors.py): a QComboBox needs a Choice annotation.
    for name, cls in bound.items():
        kind = fields[name]
        if cls == "qMRMLNodeComboBox":
            assert kind.startswith("slicer.vtkMRML"), name
        elif cls == "QComboBox":
            assert kind.startswith("Annotated[str, Choice("), name
        elif cls == "QCheckBox":
            assert kind == "bool", name
        else:
            assert cls == "QLineEdit" and kind == "str", name
    assert "apiKey" not in fields  # a secret never goes into a saved scene
