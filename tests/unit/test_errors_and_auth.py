import pytest

from orchestrator.comfy.client import describe_node_errors, output_files
from orchestrator.core.errors import Forbidden
from orchestrator.core.keys import Role, authorize
from orchestrator.db.tables import ApiKey

NODE_ERRORS = {"2": {"class_type": "ImageScaleBy", "dependent_outputs": ["3"], "errors": [
    {"type": "value_bigger_than_max", "message": "Value bigger than max", "details": "scale_by",
     "extra_info": {"input_name": "scale_by"}}]}}


def test_node_errors_name_node_title_class_and_input() -> None:
    text = describe_node_errors("Prompt outputs failed validation", NODE_ERRORS, {"2": "Scale"})
    assert text.startswith("Prompt outputs failed validation; ")
    assert "node 'Scale' (#2 ImageScaleBy) input 'scale_by': Value bigger than max" in text


def test_output_files_of_every_kind() -> None:
    ui = {"images": [{"filename": "a.png", "subfolder": "x", "type": "output"}], "animated": [True],
          "gifs": [{"filename": "b.mp4", "subfolder": "", "type": "output"}], "text": ["hello"]}
    assert [r.filename for r in output_files(ui)] == ["a.png", "b.mp4"]


def test_roles() -> None:
    runner = ApiKey(name="r", key_hash="h", roles=["run"])
    authorize(runner, Role.run)
    authorize(runner)  # any valid key may read
    authorize(ApiKey(name="a", key_hash="h", roles=["admin"]), Role.publish)
    with pytest.raises(Forbidden, match="key 'r' lacks the role"):
        authorize(runner, Role.publish)
