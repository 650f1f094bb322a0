"""Work whose client went away stops: the thread of a cancelled request gives up at its next check."""

import asyncio
import threading

import numpy as np
import pytest
from test_composer import encode, tiny_model

from encore.serving.versions import run_until_cancelled


def test_a_cancelled_request_stops_its_thread_at_the_next_check():
    started, stopped = threading.Event(), threading.Event()

    def work(cancelled: threading.Event) -> str:
        started.set()
        while not cancelled.wait(0.01):
            pass
        stopped.set()
        return "no one reads this"

    async def client_goes_away():
        task = asyncio.create_task(run_until_cancelled(work))
        await asyncio.to_thread(started.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(client_goes_away())
    assert stopped.wait(10), "the work went on after its request was cancelled"


def test_sampling_stops_once_cancelled():
    model = tiny_model(scale=0.3, pitch_low=48, pitch_high=84, max_notes=4)
    cancelled = threading.Event()
    cancelled.set()
    with pytest.raises(TimeoutError, match="after 1 of 20 steps: cancelled"):
        model.generate(encode([[60, 64, 67]]), 20, seed=3, cancelled=cancelled)


def test_a_long_track_is_classified_from_a_bounded_number_of_windows():
    from encore.audio.features import DecodedAudio, analyse_windows

    rate = 4_000
    seconds = np.arange(20 * rate) / rate
    # Each 1-second window a tone one semitone above the last: the windows chosen show in the features.
    tone = np.sin(2 * np.pi * 220 * 2 ** (np.floor(seconds) / 12) * seconds).astype(np.float32)
    audio = DecodedAudio(tone, rate, rate, 1, 20.0)
    every = analyse_windows(audio, seconds=1.0).windows
    spread = analyse_windows(audio, seconds=1.0, max_windows=4).windows
    assert len(every) == 20 and spread == [every[0], every[6], every[13], every[19]]
    cancelled = threading.Event()
    cancelled.set()
    with pytest.raises(TimeoutError, match="after 0 of 4 windows"):
        analyse_windows(audio, seconds=1.0, max_windows=4, cancelled=cancelled)
