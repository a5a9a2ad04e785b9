async def solve(problem):
    """Self-consistency: several reasoning samples, majority vote on the answers."""
    drafts = [await answer_generate(problem) for _ in range(5)]
    return await ensemble(problem, drafts)
