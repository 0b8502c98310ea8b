using System.Text.Json;
using BlockMirror.Interop.Tests.Nbd;

namespace BlockMirror.Interop.Tests.Qcow2;

/// <summary>The qemu-img / qemu-io calls the qcow2 interop tests make, with QEMU's exit codes.</summary>
internal static class QemuImg
{
    /// <summary>qemu-img check: 0 clean, 2 corruptions, 3 leaks only (1: the check itself failed).</summary>
    public static async Task<ToolResult> CheckAsync(string image) =>
        await InteropTools.RunAsync("qemu-img", ["check", "-f", "qcow2", image]);

    public static async Task AssertCleanAsync(string image)
    {
        var result = await CheckAsync(image);
        Assert.True(result.ExitCode == 0, "qemu-img check: " + result.Describe());
    }

    public static async Task AssertNoCorruptionAsync(string image)
    {
        var result = await CheckAsync(image);
        Assert.True(result.ExitCode is 0 or 3, "qemu-img check: " + result.Describe());
    }

    /// <summary>qemu-img compare of the qcow2 image (through its backing chain) with a raw file: exit 0 when equal.</summary>
    public static async Task AssertSameAsRawAsync(string image, string raw)
    {
        var result = await InteropTools.RunAsync("qemu-img", ["compare", "-f", "qcow2", "-F", "raw", image, raw]);
        Assert.True(result.ExitCode == 0, "qemu-img compare: " + result.Describe());
    }

    public static async Task<JsonElement> InfoAsync(string image)
    {
        var result = await InteropTools.RunOkAsync("qemu-img", "info", "--output=json", "-f", "qcow2", image);
        return JsonDocument.Parse(result.Stdout).RootElement.Clone();
    }

    public static async Task<JsonElement> MapAsync(string image)
    {
        var result = await InteropTools.RunOkAsync("qemu-img", "map", "--output=json", "-f", "qcow2", image);
        return JsonDocument.Parse(result.Stdout).RootElement.Clone();
    }

    public static Task<ToolResult> RunAsync(params string[] arguments) => InteropTools.RunOkAsync("qemu-img", arguments);

    public static Task<ToolResult> IoAsync(params string[] arguments) => InteropTools.RunOkAsync("qemu-io", arguments);
}
