using BlockMirror.Api.Options;

namespace BlockMirror.Api.Infrastructure;

/// <summary>
/// The connection caps the servers really use: the configured ones when they fit in the process's
/// descriptor limit minus <see cref="LimitsOptions.ReservedFileDescriptors"/>, else lowered in
/// proportion until they do (with <see cref="Clamped"/> saying so, as nginx warns when
/// worker_connections exceed the open-file limit): a full connection table must leave the
/// descriptors that images, the database and the journal need, or the next open fails and the
/// runtime dies. At start the soft RLIMIT_NOFILE is raised to the hard one (the runtime does the
/// same; done here too so the budget is computed from the limit really in force).
/// </summary>
public sealed class ConnectionBudget
{
    private ConnectionBudget(int http, int upgraded, int nbd, long? limit, string? clamped)
    {
        HttpConnections = http;
        HttpUpgradedConnections = upgraded;
        NbdConnections = nbd;
        DescriptorLimit = limit;
        Clamped = clamped;
    }

    /// <summary>Kestrel's MaxConcurrentConnections.</summary>
    public int HttpConnections { get; }

    /// <summary>Kestrel's MaxConcurrentUpgradedConnections.</summary>
    public int HttpUpgradedConnections { get; }

    /// <summary>The NBD server's connection cap (0 when the server is off).</summary>
    public int NbdConnections { get; }

    /// <summary>The soft RLIMIT_NOFILE in force, or null where it is not known (not Linux).</summary>
    public long? DescriptorLimit { get; }

    /// <summary>Why and how the configured caps were lowered, or null when they fit as configured.</summary>
    public string? Clamped { get; }

    /// <summary>Raises the descriptor limit and fits the configured caps in it.</summary>
    public static ConnectionBudget Create(LimitsOptions limits, NbdOptions nbd) =>
        Fit(RaiseDescriptorLimit(), limits, string.IsNullOrWhiteSpace(nbd.Listen) ? 0 : nbd.MaxConnections);

    /// <summary>
    /// Fits the caps in <paramref name="descriptorLimit"/> (null: unknown, taken as configured), or
    /// throws a <see cref="StartupRefusedException"/> when the reserve leaves no descriptor at all.
    /// </summary>
    public static ConnectionBudget Fit(long? descriptorLimit, LimitsOptions limits, int nbdConnections)
    {
        int[] wanted = [limits.MaxHttpConnections, limits.MaxHttpUpgradedConnections, nbdConnections];
        if (descriptorLimit is not { } limit)
            return new(wanted[0], wanted[1], wanted[2], null, null);
        var budget = limit - limits.ReservedFileDescriptors;
        var needed = wanted.Sum(w => (long)w);
        if (needed <= budget)
            return new(wanted[0], wanted[1], wanted[2], limit, null);
        var minimum = wanted.Count(w => w > 0);
        if (budget < minimum)
        {
            throw new StartupRefusedException(ExitCodes.Configuration,
                $"the open-file limit (RLIMIT_NOFILE) is {limit}: after Limits:ReservedFileDescriptors ({limits.ReservedFileDescriptors}) " +
                "no descriptor is left for connections: raise the limit (ulimit -n, systemd LimitNOFILE=, docker --ulimit nofile=) or lower the reserve");
        }
        var fitted = wanted.Select(w => w == 0 ? 0 : (int)Math.Max(1, w * budget / needed)).ToArray();
        // Rounding each up to 1 may overshoot by a few: take them back from the largest.
        while (fitted.Sum(f => (long)f) > budget)
            fitted[Array.IndexOf(fitted, fitted.Max())]--;
        var clamped = $"the open-file limit (RLIMIT_NOFILE) is {limit}; with {limits.ReservedFileDescriptors} descriptors reserved (Limits:ReservedFileDescriptors) " +
            $"the connection caps are lowered to fit {budget}: Limits:MaxHttpConnections {wanted[0]} -> {fitted[0]}, " +
            $"Limits:MaxHttpUpgradedConnections {wanted[1]} -> {fitted[1]}" + (wanted[2] > 0 ? $", Nbd:MaxConnections {wanted[2]} -> {fitted[2]}" : "");
        return new(fitted[0], fitted[1], fitted[2], limit, clamped);
    }

    /// <summary>Sets the soft RLIMIT_NOFILE to the hard one; returns the soft limit then in force (null: unknown).</summary>
    private static long? RaiseDescriptorLimit()
    {
        if (!OperatingSystem.IsLinux() || HostNative.getrlimit(HostNative.RLIMIT_NOFILE, out var current) != 0)
            return null;
        if (current.Current < current.Maximum)
        {
            var raised = new NativeRlimit { Current = current.Maximum, Maximum = current.Maximum };
            if (HostNative.setrlimit(HostNative.RLIMIT_NOFILE, raised) == 0)
                current = raised;
        }
        return current.Current >= long.MaxValue ? long.MaxValue : (long)current.Current;
    }
}
