namespace BlockMirror.Api.Infrastructure;

/// <summary>A part of the service started after the block layer is loaded and stopped before it stops (jobs, NBD).</summary>
public interface IStartupParticipant
{
    Task StartAsync(CancellationToken cancellationToken);

    Task StopAsync(CancellationToken cancellationToken);
}
