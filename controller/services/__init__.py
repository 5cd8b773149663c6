"""Grid services stacked on the schedule (issue 15): FCR from the POI frequency (fcr), the one sum of the base
target and the services' parts (stack), the reserve they hold back from trading (reserve), the fast path that
follows the frequency between cycles (fast), and the per-second provision records (records).

The functions in fcr, stack and reserve are pure (values in, values out, no clock): the cycle, the pre-trade
check and the optimiser call them; whatever they give still passes limit()/allocate() before the PCS sees it.
"""
