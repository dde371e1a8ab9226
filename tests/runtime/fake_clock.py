"""A clock the test moves by hand (``clock.now += 0.5``), for code that takes ``clock=``."""


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now
