using BlockMirror.Api.Options;
using BlockMirror.Nbd;
using Microsoft.Extensions.Options;

namespace BlockMirror.Api.Infrastructure;

/// <summary>
/// What must hold before the host starts anything (Program runs it right after Build, so no
/// hosted service, listener or migration has run yet): the settings are valid, this process owns
/// the data folder (<see cref="DataDirectoryLock"/>), the database is not a lost one
/// (<see cref="LostDatabaseGuard"/>), and the connection caps fit the descriptor limit
/// (<see cref="ConnectionBudget"/>). Each refusal is a <see cref="StartupRefusedException"/>.
/// </summary>
public static partial class StartupChecks
{
    public static void Run(IServiceProvider services)
    {
        var (limits, nbd) = ValidateOptions(services);
        LoadTlsCredentials(services);
        var dataLock = services.GetRequiredService<DataDirectoryLock>();
        dataLock.Acquire();
        var connectionString = ServiceRegistration.ResolveConnectionString(
            services.GetRequiredService<IConfiguration>(), services.GetRequiredService<IHostEnvironment>().ContentRootPath);
        LostDatabaseGuard.Check(DataDirectoryLock.DatabaseFile(connectionString), ServiceRegistration.BitmapJournalPrefix(connectionString));
        var budget = services.GetRequiredService<ConnectionBudget>();
        var logger = services.GetRequiredService<ILoggerFactory>().CreateLogger(typeof(StartupChecks));
        if (budget.Clamped is { } clamped)
            LogClamped(logger, clamped);
        LogLimits(logger, budget.HttpConnections, budget.NbdConnections, budget.DescriptorLimit?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "unknown",
            limits.ReservedFileDescriptors, nbd.Listen);
    }

    /// <summary>
    /// Binds every options class now, so a value that does not convert ("abc" for a number) or is out
    /// of range is one clear refusal at start, not an exception in the first request that reads it.
    /// </summary>
    private static (LimitsOptions Limits, NbdOptions Nbd) ValidateOptions(IServiceProvider services)
    {
        try
        {
            var storage = services.GetRequiredService<IOptions<StorageOptions>>().Value;
            var nbd = services.GetRequiredService<IOptions<NbdOptions>>().Value;
            var limits = services.GetRequiredService<IOptions<LimitsOptions>>().Value;
            _ = services.GetRequiredService<IOptions<AuthOptions>>().Value;
            var jobs = services.GetRequiredService<IOptions<JobsOptions>>().Value;
            var bitmaps = services.GetRequiredService<IOptions<BitmapsOptions>>().Value;
            var problems = new List<string>();
            Require(problems, storage.MaxDataBodyBytes >= 1, "Storage:MaxDataBodyBytes must be at least 1");
            Require(problems, !string.IsNullOrWhiteSpace(storage.Root), "Storage:Root must not be empty");
            if (!string.IsNullOrWhiteSpace(nbd.Listen) && !NbdListenAddress.TryParse(nbd.Listen, out _, out var error))
                problems.Add($"Nbd:Listen '{nbd.Listen}' is invalid: {error}");
            Require(problems, nbd.MaxConnections >= 1, "Nbd:MaxConnections must be at least 1");
            Require(problems, nbd.HandshakeTimeout > TimeSpan.Zero, "Nbd:HandshakeTimeout must be positive");
            Require(problems, limits.MaxHttpConnections >= 1, "Limits:MaxHttpConnections must be at least 1");
            Require(problems, limits.MaxHttpUpgradedConnections >= 0, "Limits:MaxHttpUpgradedConnections must not be negative");
            Require(problems, limits.HttpRequestHeadersTimeout > TimeSpan.Zero, "Limits:HttpRequestHeadersTimeout must be positive");
            Require(problems, limits.HttpKeepAliveTimeout > TimeSpan.Zero, "Limits:HttpKeepAliveTimeout must be positive");
            Require(problems, limits.ReservedFileDescriptors >= 0, "Limits:ReservedFileDescriptors must not be negative");
            Require(problems, jobs.AutoCopyModeWindow > TimeSpan.Zero, "Jobs:AutoCopyModeWindow must be positive");
            Require(problems, bitmaps.ActivityLogExtentBytes >= 512 && System.Numerics.BitOperations.IsPow2(bitmaps.ActivityLogExtentBytes),
                "Bitmaps:ActivityLogExtentBytes must be a power of two of at least 512");
            Require(problems, bitmaps.ActivityLogHotExtents >= 1, "Bitmaps:ActivityLogHotExtents must be at least 1");
            if (problems.Count > 0)
                throw new StartupRefusedException(ExitCodes.Configuration, "invalid configuration: " + string.Join("; ", problems));
            return (limits, nbd);
        }
        catch (InvalidOperationException e) when (e is not StartupRefusedException)
        {
            // The configuration binder: "Failed to convert configuration value at 'Nbd:MaxConnections' to type 'System.Int32'."
            throw new StartupRefusedException(ExitCodes.Configuration, "invalid configuration: " + e.Message, e);
        }
    }

    /// <summary>The NBD TLS files are read now: a missing or unreadable file, a key that is not the certificate's, an expired certificate refuse the start.</summary>
    private static void LoadTlsCredentials(IServiceProvider services)
    {
        try
        {
            _ = services.GetRequiredService<NbdTlsCredentials>();
        }
        catch (NbdTlsConfigurationException e)
        {
            throw new StartupRefusedException(ExitCodes.Configuration, "invalid configuration: " + e.Message, e);
        }
    }

    private static void Require(List<string> problems, bool condition, string problem)
    {
        if (!condition)
            problems.Add(problem);
    }

    [LoggerMessage(1, LogLevel.Warning, "{Clamped}")]
    private static partial void LogClamped(ILogger logger, string clamped);

    [LoggerMessage(2, LogLevel.Debug, "Connection caps: HTTP {Http}, NBD {Nbd} (RLIMIT_NOFILE {Limit}, {Reserved} reserved; Nbd:Listen '{Listen}')")]
    private static partial void LogLimits(ILogger logger, int http, int nbd, string limit, int reserved, string listen);
}
