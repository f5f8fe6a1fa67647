"""cxpulse: streaming customer-experience metrics (Faust agents, the aggregation core, the CLI)."""
