namespace BlockMirror.Core.Jobs;

/// <summary>A job's run ended with an error; <see cref="Exception.Message"/> becomes the job's <c>error</c>.</summary>
public sealed class JobFailedException(string message, Exception? inner = null) : Exception(message, inner);
