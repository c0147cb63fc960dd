"""The plugin's code proper; runs only in its worker, imported from the plugin folder."""

from cordon.worker import Context, Plugin

plugin = Plugin()


@plugin.tool
async def greet(ctx: Context, name: str) -> str:
    """Greet someone by name."""
    return f"Hello {name} from an installed distribution"
