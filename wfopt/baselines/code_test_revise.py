async def solve(problem):
    """Code tasks: write the function, check the public examples, fix it once if they fail."""
    code = await code_generate(problem, entry_point)
    report = await test(problem, code, entry_point)
    if report.startswith("FAIL"):
        fixed = await revise(problem, code, report)
        code = await format_answer(problem, fixed)
    return code
