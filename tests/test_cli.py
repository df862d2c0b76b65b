"""The command line's one vocabulary: -o/--output, --build, --profile in every command that has
them (old spellings still parse, unlisted), readable help for every option, --version, usage
errors as one `error:` line, and a light `stsun --help` (no torch)."""
import re
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

import stsun
from stsun.app.cli import _profile_names, app, check_built_for
from stsun.errors import EngineError
from stsun.profiles import load_profile

GROUP = typer.main.get_command(app)
COMMANDS = {name: cmd for name, cmd in GROUP.commands.items() if not cmd.hidden}
# what typer shows when a parameter has no metavar: `{dates}...`, `<list[Path]>`, `<bool>`, `<int range>`
TYPER_METAVAR = re.compile(r"\{[a-z_]+\}|<(bool|int|float|str|path|text|list\[[^\]]*\]|[a-z]+ range)>", re.I)


def parse(command: str, args: list[str]) -> dict:
    """The values ``args`` give ``command``'s parameters (parsed as `stsun` would, nothing run)."""
    return COMMANDS[command].make_context(command, args).params


def test_commands_are_listed_in_the_order_a_user_meets_them():
    res = CliRunner().invoke(app, ["--help"])
    assert res.exit_code == 0, res.output
    listed = [line.split()[0] for line in res.output.split("Commands:")[1].splitlines() if line.strip()]
    assert listed[:7] == ["demo", "profiles", "build", "predict", "predict-many", "triton-repo", "serve"]
    assert set(listed) == set(COMMANDS) and {"train-synthetic", "evaluate-synthetic"} <= set(listed)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_has_help_and_a_readable_metavar(name):
    res = CliRunner().invoke(app, [name, "--help"], terminal_width=120)
    assert res.exit_code == 0, res.output
    assert not TYPER_METAVAR.search(res.output), TYPER_METAVAR.search(res.output)
    ctx = COMMANDS[name].make_context(name, ["--help"], resilient_parsing=True)
    for param in COMMANDS[name].get_params(ctx):
        if param.hidden or param.name == "help":
            continue
        assert param.help, f"{name} {param.opts}: no help text"
        if param.param_type_name == "argument" or not param.is_flag:
            assert re.fullmatch(r"[A-Z][A-Z0-9_:]*", param.metavar or ""), f"{name} {param.opts}: {param.metavar!r}"
    # an option the old way is still parsed but never shown
    for old in ("--out ", "--output-dir", "--engine", "--profiles", "--repo "):
        assert old not in res.output or (name == "serve" and old == "--repo "), (name, old)


def test_the_check_is_not_vacuous():
    assert TYPER_METAVAR.search("  dates... <list[Path]>") and TYPER_METAVAR.search("--json <bool>")
    assert TYPER_METAVAR.search("Usage: stsun predict [OPTIONS] {dates}...")
    assert not TYPER_METAVAR.search('OUTDIR/<id>.tif, a JSON list of {"id": ...}')


@pytest.mark.parametrize("command, args, expected", [
    ("build", ["--profile", "sentinel2-scd", "-o", "B"], {"output": "B", "profile": "sentinel2-scd"}),
    ("predict", ["d1.tif", "d2.tif", "--build", "B", "-o", "m.tif"], {"build": "B", "output": "m.tif"}),
    ("predict-many", ["jobs.csv", "--build", "B", "-o", "maps"], {"build": "B", "output": "maps"}),
    ("triton-repo", ["--build", "B", "-o", "R"], {"build": "B", "output": "R"}),
    ("evaluate", ["--data", "D", "--profile", "p.toml", "--build", "B", "-o", "e.json"],
     {"build": "B", "output": "e.json", "profile": "p.toml"}),
    ("train", ["--data", "D", "--profile", "p.toml", "-o", "m.safetensors"], {"output": "m.safetensors"}),
    ("import-research", ["last.ckpt", "--dataset", "whu", "-o", "m.safetensors"], {"output": "m.safetensors"}),
    ("calibrate-bn", ["--checkpoint", "c", "--profile", "sentinel2-bcd", "--profile", "sentinel2-ss", "-o", "x"],
     {"output": "x", "profile": ["sentinel2-bcd", "sentinel2-ss"]}),
    ("train-synthetic", ["--profile", "sentinel2-bcd", "-o", "m.safetensors"],
     {"output": "m.safetensors", "profile": ["sentinel2-bcd"]}),
    ("evaluate-synthetic", ["-o", "e.json"], {"output": "e.json"}),
    ("demo", ["-o", "d"], {"output": "d"}),
])
def test_one_vocabulary_and_the_old_spellings_mean_the_same(command, args, expected):
    params = parse(command, args)
    assert {k: (str(params[k]) if not isinstance(params[k], list) else params[k]) for k in expected} == expected
    old = {"-o": {"build": "--out", "predict-many": "--output-dir", "triton-repo": "--repo"}.get(command, "--out"),
           "--build": "--engine", "--profile": "--profiles"}
    if command in ("evaluate", "train"):  # their --profile is the data's; --profiles is the old synthetic mode
        old.pop("--profile")
    renamed = [old.get(a, a) for a in args]
    if renamed != args and command not in ("predict", "demo"):  # predict and demo always had -o
        assert parse(command, renamed) == params, renamed


def test_triton_repo_still_takes_the_build_as_an_argument(tmp_path):
    assert parse("triton-repo", ["B"])["build_dir"].name == "B"
    res = CliRunner().invoke(app, ["triton-repo", "-o", str(tmp_path / "r")])
    assert res.exit_code == 2 and "error: Missing option '--build'." in res.output
    res = CliRunner().invoke(app, ["triton-repo", str(tmp_path / "a"), "--build", str(tmp_path / "b")])
    assert res.exit_code == 2 and "two build directories" in res.output


def test_a_missing_build_directory_is_one_error_line(tmp_path):
    res = CliRunner().invoke(app, ["predict", "d1.tif", "d2.tif", "--build", str(tmp_path / "none"), "-o",
                                   str(tmp_path / "m.tif")], terminal_width=400)
    assert res.exit_code == 2 and res.output.count("error:") == 1 and "is not a build directory" in res.output


def test_repeated_profiles_and_comma_lists():
    assert _profile_names(["sentinel2-bcd,sentinel2-ss", "landsat8-ss"]) == ["sentinel2-bcd", "sentinel2-ss",
                                                                            "landsat8-ss"]
    assert _profile_names(None) == ["sentinel2-scd", "sentinel2-bcd", "sentinel2-ss"]


def test_the_built_for_check(tmp_path):
    scd = load_profile("sentinel2-scd")
    check_built_for(tmp_path, scd, load_profile("sentinel2-scd"))
    with pytest.raises(EngineError, match="was built for profile 'sentinel2-scd', not 'landsat8-ss'"):
        check_built_for(tmp_path, scd, load_profile("landsat8-ss"))
    other = scd.model_copy(update={"tile_size": 128})
    with pytest.raises(EngineError, match=r"\(scd, tile 256\), not this 'sentinel2-scd' \(scd, tile 128\)"):
        check_built_for(tmp_path, scd, other)


def stsun_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stsun", *args], capture_output=True, text=True, timeout=120)


def test_version():
    res = stsun_cli("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"stsun {stsun.__version__}" == "stsun 0.1.0"


@pytest.mark.parametrize("args, message", [
    (["predict", "--bad"], "error: No such option: --bad"),
    (["predict", "d1.tif", "--build", "B"], "error: Missing option '-o' / '--output'."),
    (["predict-many", "--build", "B", "-o", "m"], "error: Missing argument 'MANIFEST'."),
    (["nosuch"], "error: No such command 'nosuch'."),
    (["train", "--profile", "sentinel2-bcd"], "error: --profile can only be used with --data"),
    (["build", "--engin", "x"], "error: No such option: --engin"),
])
def test_usage_errors_are_one_plain_line(args, message):
    res = stsun_cli(*args)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.splitlines() == [message] or res.stderr.startswith(message + " (Possible options:")
    assert "╭" not in res.stderr and "Traceback" not in res.stderr


def test_help_loads_no_torch():
    code = ("import sys\nimport stsun.app.cli\nassert 'torch' not in sys.modules\nsys.argv = ['stsun', '--help']\n"
            "try:\n    stsun.app.cli.main()\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "print('torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Commands:" in res.stdout and "  build " in res.stdout and "  predict " in res.stdout
    assert res.stdout.strip().splitlines()[-1] == "False"


def documented_options() -> list[tuple[str, str, str]]:
    """(page, command, option) for every `stsun COMMAND ... --option` written in README.md and docs/."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    found = []
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for line in page.read_text().splitlines():
            for segment in re.split(r"(?<![\w/.-])stsun ", line)[1:]:
                name, _, rest = segment.partition(" ")
                rest = re.split(r"`|#|;|\(", rest)[0]  # the command ends with its code span or comment
                found += [(page.name, name, o) for o in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", rest)]
    return found


def test_the_docs_use_the_options_the_commands_have():
    wrong = []
    for page, name, option in documented_options():
        if name in COMMANDS:
            cmd = COMMANDS[name]
            shown = {o for p in cmd.params if not p.hidden for o in [*p.opts, *getattr(p, "secondary_opts", [])]}
            if option not in shown:
                wrong.append((page, name, option))
    assert wrong == []
    assert ("05-many-scenes.md", "predict-many", "--build") in documented_options()  # not vacuous
