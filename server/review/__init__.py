"""The analyst review UI: case queue, case pages, and the page rendering shared by HTML areas."""
