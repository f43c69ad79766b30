"""The foundation every layer may import: settings, metrics, logs. It imports nothing of ours."""
