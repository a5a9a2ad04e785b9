async def solve(problem):
    """Let the model write and run a program; fall back to reasoning if it never runs."""
    result = await programmer(problem)
    if result:
        return result
    return await answer_generate(problem)
