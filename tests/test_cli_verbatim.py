"""The CLI's consoles print user and GDAL text as given: no markup, no highlighting, no emoji codes."""
from stsun.app import cli


def test_emoji_codes_in_a_path_are_printed_as_typed():
    for console in (cli.console, cli.errors):
        with console.capture() as captured:
            console.print("wrote out/:thumbs_up:/[bold]map.tif", soft_wrap=True)
        assert captured.get() == "wrote out/:thumbs_up:/[bold]map.tif\n"
