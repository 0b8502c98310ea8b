using System.Reflection;

namespace BlockMirror.Api.Infrastructure;

/// <summary>Knows when Program runs inside an OpenAPI generator rather than as the service.</summary>
public static class HostEnvironmentExtensions
{
    /// <summary>True under the build-time document generator (GetDocument.Insider) or the swagger CLI.</summary>
    public static bool IsDocumentGeneration() =>
        Assembly.GetEntryAssembly()?.GetName().Name is "GetDocument.Insider" or "dotnet-swagger";
}
