using BlockMirror.Core.Images;
using Microsoft.Extensions.Diagnostics.HealthChecks;

namespace BlockMirror.Api.Infrastructure;

/// <summary>Healthy when the image root exists and is writable.</summary>
public sealed class ImageRootHealthCheck(ImageRoot root) : IHealthCheck
{
    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        try
        {
            var probe = Path.Combine(root.FullPath, $".health-{Environment.ProcessId}");
            File.WriteAllBytes(probe, []);
            File.Delete(probe);
            return Task.FromResult(HealthCheckResult.Healthy());
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return Task.FromResult(HealthCheckResult.Unhealthy($"Image root {root.FullPath} is not writable: {e.Message}"));
        }
    }
}
