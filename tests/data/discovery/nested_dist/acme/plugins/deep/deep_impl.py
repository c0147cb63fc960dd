from cordon.worker import Plugin

plugin = Plugin()
