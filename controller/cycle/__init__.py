"""The control cycle: devices polled into a frozen snapshot, the pure limit function, the one writer of
setpoints, and the loop that runs them in rhythm (loop.Controller)."""
