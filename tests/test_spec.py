"""Specs are data: round trips, schema version, and clear errors naming the bad field."""

from __future__ import annotations

import pytest

import interventions as iv
from interventions.errors import SpecFormatError, UnknownCombineError, UnknownSiteError

SPECS = [
    iv.Splice(source=iv.Site("A", layer=8), target=iv.Site("B", layer=0.5, position=(-2, -1)),
              combine="mean", align=iv.Align("linear", n_sentences=500), apply="every_step"),
    iv.Capture(sites=(iv.Site("A", layer=-1, position="all", stream="mlp_out"),)),
    iv.Steer(target=iv.Site("B", layer=3), vector=(0.5, -1.0), scale=2.0),
]


@pytest.mark.parametrize("spec", SPECS)
def test_json_and_yaml_round_trip(spec, tmp_path):
    assert iv.from_dict(iv.to_dict(spec)) == spec
    for suffix in (".json", ".yaml"):
        path = tmp_path / f"spec{suffix}"
        iv.save_spec(spec, path)
        assert iv.load_spec(path) == spec
    assert iv.to_dict(spec)["schema_version"] == iv.SCHEMA_VERSION


def test_specs_are_frozen():
    with pytest.raises(Exception):
        SPECS[0].combine = "sum"


def test_typo_in_field_names_the_field():
    data = iv.to_dict(SPECS[0])
    data["source"]["layr"] = data["source"].pop("layer")
    with pytest.raises(SpecFormatError, match=r"spec\.source\.layr.*Did you mean 'layer'"):
        iv.from_dict(data)


def test_wrong_schema_version_and_kind():
    data = iv.to_dict(SPECS[0])
    with pytest.raises(SpecFormatError, match="schema_version"):
        iv.from_dict({**data, "schema_version": 99})
    with pytest.raises(SpecFormatError, match="spec.kind"):
        iv.from_dict({**data, "kind": "graft"})


def test_malformed_yaml_says_so(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("kind: splice\nsource: [unclosed\n")
    with pytest.raises(SpecFormatError, match="not valid YAML"):
        iv.load_spec(path)


def test_bad_layer_type_names_field():
    data = iv.to_dict(SPECS[0])
    data["target"]["layer"] = "eight"
    with pytest.raises(SpecFormatError, match=r"spec\.target.*layer"):
        iv.from_dict(data)


def test_unknown_combine_lists_known():
    with pytest.raises(UnknownCombineError, match=r"'sume'.*Did you mean 'sum'.*Known: mean, .*replace, .*sum"):
        iv.Splice(source=iv.Site("A", 1), target=iv.Site("B", 1), combine="sume")


def test_unknown_stream_suggests_close():
    with pytest.raises(UnknownSiteError, match="resid_post"):
        iv.Site("A", 1, stream="resid_pots")
    assert iv.Site("A", 1, stream="hook_resid_post").stream == "resid_post"


def test_registered_combine_is_usable_by_name():
    @iv.register_combine("double_source")
    def double(target, source):
        return 2 * source

    spec = iv.Splice(source=iv.Site("A", 1), target=iv.Site("B", 1), combine="double_source")
    assert iv.from_dict(iv.to_dict(spec)).combine == "double_source"
    del iv.COMBINES["double_source"]
