"""Processing: pure domain logic (pricing, budgets, periods, alerts) and the faust agents that wire it."""
