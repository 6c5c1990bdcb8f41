"""The part of Go's text/template that Lima's templates use, evaluated as Go would."""

from __future__ import annotations

import pytest

from torpor.config.gotemplate import TemplateError, expand

V = {"Name": "vm", "UID": 1000, "Param": {"url": "", "token": "t", "release": "stable", "on": "true"}}


@pytest.mark.parametrize(
    ("text", "out"),
    [
        ("plain text", "plain text"),
        ("/run/user/{{.UID}}/docker.sock", "/run/user/1000/docker.sock"),
        ("{{ .Name }}-{{.Param.token}}", "vm-t"),
        ("a\n  {{- .Name}}", "avm"),
        ("{{.Name -}}  \n b", "vmb"),
        ("{{if .Param.on}}yes{{end}}", "yes"),
        ("{{if .Param.url}}yes{{else}}no{{end}}", "no"),
        ("{{if not ( and .Param.url .Param.token )}}join{{else}}server{{end}}", "join"),
        ('{{if eq .Param.release "stable"}}s{{else if eq .Param.release "x"}}x{{else}}o{{end}}', "s"),
        ('{{if ne .Param.release "stable"}}s{{end}}', ""),
        ("{{if or .Param.url .Param.token}}any{{end}}", "any"),
        ("{{if .Instance.Config.VMOpts.vz.rosetta.enabled}}R{{end}}", ""),  # missing: false in a condition
        ("{{/* a comment */}}x", "x"),
        ("{{if .Param.on}}{{if .Param.url}}a{{else}}b{{end}}{{end}}", "b"),
    ],
)
def test_expand(text: str, out: str) -> None:
    assert expand(text, V) == out


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("{{.Parm.x}}", "{{.Parm.x}} is not defined"),
        ("{{if .Name}}x", "without its {{end}}"),
        ("{{end}}", "without an {{if}}"),
        ("{{range .Param}}x{{end}}", "range"),
        ("{{.Name | printf}}", "pipes"),
        ("{{printf .Name}}", "printf"),
        ("{{.Name", "not closed"),
    ],
)
def test_what_torpor_does_not_read_is_an_error(text: str, error: str) -> None:
    with pytest.raises(TemplateError, match=error.replace("{", "\\{").replace("|", "\\|")):
        expand(text, V)
