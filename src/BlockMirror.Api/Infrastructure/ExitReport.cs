using System.Net.Sockets;
using System.Reflection;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Options;

namespace BlockMirror.Api.Infrastructure;

/// <summary>
/// What Program prints and returns when the host ends with an exception: one line and a
/// <see cref="ExitCodes"/> code for the failures an operator causes and fixes (a refusal, an address
/// in use, an invalid setting), the whole exception for anything else (a bug needs its stack).
/// Never an unhandled exception: that aborts the runtime (SIGABRT, core dump, 60 lines on stderr).
/// </summary>
public sealed record ExitReport(int ExitCode, string Text)
{
    private const string Prefix = "blockmirror: ";

    /// <summary>
    /// Whether Program is the process (the service run as dotnet BlockMirror.Api.dll): only then does
    /// a failure become a line and an exit code. Run by another entry point (a test host, the OpenAPI
    /// generator, which stops Program with HostAbortedException), the exception goes to that host.
    /// </summary>
    public static bool OwnsProcess => Assembly.GetEntryAssembly() == typeof(ExitReport).Assembly;

    public static ExitReport Of(Exception exception, bool stopRequested) => exception switch
    {
        StartupRefusedException r => new(r.ExitCode, Prefix + r.Message),
        AggregateException { InnerExceptions.Count: 1 } a => Of(a.InnerExceptions[0], stopRequested),
        OptionsValidationException o => new(ExitCodes.Configuration, Prefix + "invalid configuration: " + string.Join("; ", o.Failures)),
        // A value the configuration binder cannot convert, met while the host is built (Kestrel's
        // options are): "Failed to convert configuration value 'x' at 'Limits:...' to type '...'".
        InvalidOperationException { TargetSite.DeclaringType: { } thrower } i when thrower == typeof(ConfigurationBinder) =>
            new(ExitCodes.Configuration, Prefix + "invalid configuration: " + i.Message),
        // Kestrel: "Failed to bind to address http://127.0.0.1:5080: address already in use."
        IOException { InnerException: AddressInUseException } io => new(ExitCodes.InUse, Prefix + io.Message),
        IOException { InnerException: SocketException } io => new(ExitCodes.Configuration, Prefix + io.Message),
        // SIGTERM or Ctrl+C while starting: the start was abandoned on purpose.
        OperationCanceledException when stopRequested => new(ExitCodes.Success, Prefix + "stopped while starting"),
        _ => new(ExitCodes.InternalError, Prefix + "unexpected failure: " + exception),
    };
}
