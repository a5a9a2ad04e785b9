async def solve(problem):
    """Draft, review, and revise while the reviewer objects (at most twice)."""
    solution = await answer_generate(problem)
    for _ in range(2):
        feedback = await review(problem, solution)
        if feedback.upper().startswith("CORRECT"):
            break
        solution = await revise(problem, solution, feedback)
    return solution
