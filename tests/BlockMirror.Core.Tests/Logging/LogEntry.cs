using Microsoft.Extensions.Logging;

namespace BlockMirror.Core.Tests.Logging;

/// <summary>One entry a <see cref="RecordingLoggerFactory"/> kept.</summary>
public sealed record LogEntry(string Category, LogLevel Level, string Message, Exception? Exception);
