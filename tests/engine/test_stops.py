from tercet.engine.stops import StopSequenceMatcher


def feed_all(matcher: StopSequenceMatcher, pieces: list[str]) -> tuple[str, str | None]:
    released = ""
    for piece in pieces:
        scan = matcher.feed(piece)
        released += scan.release
        if scan.matched is not None:
            return released, scan.matched
    return released + matcher.flush(), None


def test_stop_split_across_pieces_is_caught_and_never_leaked() -> None:
    matcher = StopSequenceMatcher(["END"])
    assert matcher.feed("hello E").release == "hello "
    assert matcher.feed("N").release == ""
    scan = matcher.feed("D and more")
    assert (scan.release, scan.matched) == ("", "END")


def test_earliest_stop_sequence_wins() -> None:
    assert feed_all(StopSequenceMatcher(["world", "lo"]), ["hello world"]) == ("hel", "lo")


def test_false_start_is_released_in_full() -> None:
    assert feed_all(StopSequenceMatcher(["ENDING"]), ["an EN", "D", " here"]) == (
        "an END here",
        None,
    )


def test_held_back_text_is_flushed_when_generation_ends() -> None:
    assert feed_all(StopSequenceMatcher(["STOP"]), ["tail ST"]) == ("tail ST", None)


def test_without_stop_sequences_everything_passes() -> None:
    matcher = StopSequenceMatcher([])
    assert matcher.feed("abc").release == "abc"
