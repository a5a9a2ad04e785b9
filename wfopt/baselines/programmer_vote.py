async def solve(problem):
    """Three programs written and run, majority vote on what they print."""
    outputs = [await programmer(problem) for _ in range(3)]
    return await ensemble(problem, outputs)
