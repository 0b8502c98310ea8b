using System.Text;

namespace BlockMirror.Interop.Tests.Nbd;

/// <summary>What a tool run produced.</summary>
internal sealed record ToolResult(string Tool, string Arguments, int ExitCode, string Stdout, string Stderr)
{
    public string Describe()
    {
        var sb = new StringBuilder();
        sb.Append(Tool).Append(' ').Append(Arguments).Append(" exited ").Append(ExitCode).AppendLine();
        sb.Append("stdout: ").AppendLine(Stdout);
        sb.Append("stderr: ").AppendLine(Stderr);
        return sb.ToString();
    }
}
