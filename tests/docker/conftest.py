"""tests/docker: the image build test runs only when asked for.

``test_images.py`` builds the images and runs a job in a container (scripts/docker_build_test.sh):
about 15 minutes cold on 2 cores, and it needs Docker. It is collected only with
``WHISPERX_DOCKER_TESTS=1``; otherwise it is left out of the run altogether (not collected,
so it is neither skipped nor counted as passed). The other files here are fast static checks
of the Dockerfiles and the model fetcher, and always run.
"""

import os

collect_ignore = [] if os.environ.get("WHISPERX_DOCKER_TESTS") == "1" else ["test_images.py"]
