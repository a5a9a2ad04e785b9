async def solve(problem):
    """Ask once, answer directly."""
    return await generate(problem)
