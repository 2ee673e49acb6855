"""The task-agnostic engine: stages (teacher -> teacher outputs -> student + baseline), the run folder, the trainer,
the distillers, the teacher-output cache, several teachers, pre-flight checks and `distil inspect`.

It asks the task unit (`distil.tasks`) for everything that differs between tasks and holds no head code.
"""
