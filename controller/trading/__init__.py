"""Trading on the edge: market rules (periods, gate closure), executed trades into a schedule and its
feasibility check, the order desk, and the client of the production exchange."""
