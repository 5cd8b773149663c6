"""The backtest (`bess-edge backtest`): the exchange simulator's engine, counterparties and day-ahead auction run
in-process on a simulated clock against the battery model, with the real pre-trade check and limit function,
comparing trading strategies (the optimiser as the auto-trader runs it, a naive rule, perfect foresight).

A composition root like the CLI: it may import simulators (pyproject.toml's contracts say so).
"""
