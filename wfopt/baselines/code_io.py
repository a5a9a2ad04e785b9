async def solve(problem):
    """Code tasks: write the function in one go."""
    return await code_generate(problem, entry_point)
