"""The soak's short form (``make soak`` is the long one): one tiny run killed at a random moment, then
two ``--resume`` of it at once (exactly one may train, the other says who holds the run) while a reader
reads every run folder as the dashboard does; it must end exactly as the uninterrupted run."""
import soak


def test_a_killed_run_resumed_twice_at_once_while_read_ends_as_if_never_interrupted(capsys):
    code = soak.main(["--quick", "--runs", "1", "--kills", "1", "--seed", "5"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "1 of 1 interrupted runs resumed exactly" in out and ", 0 problem(s)" in out
