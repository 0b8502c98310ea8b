using BlockMirror.Api.Options;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Options;

namespace BlockMirror.Api.Infrastructure;

/// <summary>Applies <see cref="LimitsOptions"/> (caps as fitted by <see cref="ConnectionBudget"/>) to Kestrel.</summary>
public sealed class KestrelLimitsSetup(ConnectionBudget budget, IOptions<LimitsOptions> limits) : IConfigureOptions<KestrelServerOptions>
{
    public void Configure(KestrelServerOptions options)
    {
        options.Limits.MaxConcurrentConnections = budget.HttpConnections;
        options.Limits.MaxConcurrentUpgradedConnections = budget.HttpUpgradedConnections;
        options.Limits.RequestHeadersTimeout = limits.Value.HttpRequestHeadersTimeout;
        options.Limits.KeepAliveTimeout = limits.Value.HttpKeepAliveTimeout;
    }
}
