async def solve(problem):
    """Self-consistency without reasoning: five direct answers, majority vote."""
    answers = [await generate(problem) for _ in range(5)]
    return await ensemble(problem, answers)
