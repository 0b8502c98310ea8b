using Xunit.Abstractions;
using Xunit.Sdk;

namespace BlockMirror.Tests.Shared;

/// <summary>A fact whose display name ends with its skip reason when it is skipped (see <see cref="ExplainedSkipFactDiscoverer"/>).</summary>
public sealed class ExplainedSkipTestCase : XunitTestCase
{
    [Obsolete("Called by the de-serializer; should only be called by deriving classes for de-serialization purposes")]
    public ExplainedSkipTestCase()
    {
    }

    public ExplainedSkipTestCase(IMessageSink diagnosticMessageSink, TestMethodDisplay defaultMethodDisplay, TestMethodDisplayOptions defaultMethodDisplayOptions, ITestMethod testMethod)
        : base(diagnosticMessageSink, defaultMethodDisplay, defaultMethodDisplayOptions, testMethod)
    {
    }

    /// <summary>Runs after discovery and after de-serialization alike: both get the reason in the name.</summary>
    protected override void Initialize()
    {
        base.Initialize();
        if (!string.IsNullOrEmpty(SkipReason))
            DisplayName = $"{DisplayName} (skipped: {SkipReason})";
    }
}
