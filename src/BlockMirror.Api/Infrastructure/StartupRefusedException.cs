namespace BlockMirror.Api.Infrastructure;

/// <summary>
/// The service will not start, for a reason an operator can act on: Program prints the message as
/// one line on stderr and exits with <see cref="ExitCode"/> (<see cref="ExitCodes"/>), no stack trace.
/// An InvalidOperationException, as the refusals it replaces were.
/// </summary>
public sealed class StartupRefusedException(int exitCode, string message, Exception? inner = null)
    : InvalidOperationException(message, inner)
{
    public int ExitCode { get; } = exitCode;
}
