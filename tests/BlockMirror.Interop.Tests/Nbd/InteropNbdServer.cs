namespace BlockMirror.Interop.Tests.Nbd;

/// <summary>The shared NBD test server with the interop tests' 16 MiB disk (room for the tools' writes).</summary>
internal static class InteropNbdServer
{
    public const long DiskSize = 16L * 1024 * 1024;
    public const int Granularity = NbdTestServer.Granularity;

    public static Task<NbdTestServer> StartAsync(bool unix = false) => NbdTestServer.StartAsync(unix, diskSize: DiskSize);
}
