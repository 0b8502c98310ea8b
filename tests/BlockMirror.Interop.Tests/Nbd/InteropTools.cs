using System.Diagnostics;

namespace BlockMirror.Interop.Tests.Nbd;

/// <summary>Finds and runs the real QEMU / libnbd / nbdkit tools the interop tests drive.</summary>
internal static class InteropTools
{
    /// <summary>With BLOCKMIRROR_REQUIRE_INTEROP=1 a missing tool fails the test instead of skipping it.</summary>
    public static bool Required => Environment.GetEnvironmentVariable("BLOCKMIRROR_REQUIRE_INTEROP") == "1";

    public static string PackageOf(string tool) => tool switch
    {
        "qemu-io" or "qemu-img" or "qemu-nbd" => "qemu-utils",
        "nbdinfo" or "nbdcopy" => "libnbd-bin",
        "nbdkit" => "nbdkit",
        _ => tool,
    };

    public static string? Find(string tool)
    {
        var path = Environment.GetEnvironmentVariable("PATH") ?? "/usr/local/bin:/usr/bin:/bin";
        foreach (var dir in path.Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries).Append("/usr/bin").Append("/usr/sbin"))
        {
            var candidate = Path.Combine(dir, tool);
            if (File.Exists(candidate))
                return candidate;
        }
        return null;
    }

    public static string MissingMessage(IEnumerable<string> tools)
    {
        var list = tools.ToList();
        var packages = string.Join(" ", list.Select(PackageOf).Distinct());
        return $"{string.Join(", ", list)} not installed (apt-get install {packages}; Debian packages qemu-utils, libnbd-bin, nbdkit). " +
               "Set BLOCKMIRROR_REQUIRE_INTEROP=1 to make a missing tool a failure.";
    }

    /// <summary>The tool's path; throws (failing the test) when it is missing.</summary>
    public static string Require(string tool) =>
        Find(tool) ?? throw new InvalidOperationException(MissingMessage([tool]));

    /// <summary>Runs a tool to completion; kills it after <paramref name="timeout"/>.</summary>
    public static async Task<ToolResult> RunAsync(string tool, IEnumerable<string> arguments, TimeSpan? timeout = null)
    {
        var info = new ProcessStartInfo(Require(tool))
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        foreach (var a in arguments)
            info.ArgumentList.Add(a);
        using var process = await ToolLauncher.StartAsync(info);
        process.StandardInput.Close();
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var cts = new CancellationTokenSource(timeout ?? TimeSpan.FromSeconds(120));
        try
        {
            await process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"{tool} {string.Join(' ', info.ArgumentList)} did not finish in time");
        }
        return new ToolResult(tool, string.Join(' ', info.ArgumentList), process.ExitCode, await stdout, await stderr);
    }

    /// <summary>Runs a tool and fails the test (with its output) unless it exits 0.</summary>
    public static async Task<ToolResult> RunOkAsync(string tool, params string[] arguments)
    {
        var result = await RunAsync(tool, arguments);
        Assert.True(result.ExitCode == 0, result.Describe());
        return result;
    }
}
