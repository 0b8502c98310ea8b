namespace BlockMirror.Interop.Tests.Qcow2;

/// <summary>
/// The test assembly's entry point (GenerateProgramFile is off): under <c>dotnet test</c> nothing
/// calls it; <c>dotnet BlockMirror.Interop.Tests.dll qcow2-crash-writer ...</c> runs the child
/// process the kill -9 tests kill.
/// </summary>
public static class InteropTestsProgram
{
    public static async Task<int> Main(string[] args)
    {
        if (args.Length > 0 && args[0] == Qcow2CrashWriter.Command)
            return await Qcow2CrashWriter.RunAsync(args[1..]);
        await Console.Error.WriteLineAsync($"usage: {Qcow2CrashWriter.Command} image seed first-id block-size cluster-size");
        return 2;
    }
}
