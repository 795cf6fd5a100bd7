"""nbgrader configuration for the course (read by every `nbgrader` command run from the repo root).

Instructors: see README.md, "Grading". For a large class point the gradebook at PostgreSQL:
    c.CourseDirectory.db_url = "postgresql://user:password@host/llmcourse"
"""

c = get_config()  # noqa: F821  (injected by nbgrader)

c.CourseDirectory.root = "."
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "exercises"
c.CourseDirectory.submitted_directory = "submitted"
c.CourseDirectory.autograded_directory = "autograded"
c.CourseDirectory.feedback_directory = "feedback"
c.CourseDirectory.db_url = "sqlite:///gradebook.db"
# Only the notebook is an assignment file; student scratch files are not copied around.
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback"]

# Students may not create or remove graded cells: edited test cells are restored from the
# source (nbgrader's checksums) before autograding, and deleted ones are put back.
c.OverwriteCells.add_missing_cells = True
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"

# A cell that runs longer than this is interrupted; only the tasks that need it lose points
# (interrupt_on_timeout keeps the kernel and the rest of the notebook running).
c.Execute.timeout = 60
c.Execute.interrupt_on_timeout = True
