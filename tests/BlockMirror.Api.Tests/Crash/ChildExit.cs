namespace BlockMirror.Api.Tests.Crash;

/// <summary>How a child service that was expected to refuse ended: its exit code (null: it started instead and was killed) and what it printed.</summary>
internal sealed record ChildExit(int? ExitCode, string Stdout, string Stderr)
{
    /// <summary>The non-empty lines of stderr.</summary>
    public IReadOnlyList<string> StderrLines => [.. Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)];

    public override string ToString() => $"exit {ExitCode?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "none (it started)"}\nstdout:\n{Stdout}\nstderr:\n{Stderr}";
}
