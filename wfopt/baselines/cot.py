async def solve(problem):
    """Chain of thought: reason step by step, end with the answer."""
    return await answer_generate(problem)
