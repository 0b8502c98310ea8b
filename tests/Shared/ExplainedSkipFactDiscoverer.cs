using Xunit.Abstractions;
using Xunit.Sdk;

namespace BlockMirror.Tests.Shared;

/// <summary>
/// The discoverer of the facts that skip themselves where a tool, root or a browser is missing
/// (BrowserFact, NbdInteropFact, TmpfsFact, ChattrFact): their test cases carry the skip reason in
/// their display name, so the default <c>dotnet test</c> output (minimal verbosity, which prints
/// only the names of skipped tests) says why each one was skipped.
/// </summary>
public sealed class ExplainedSkipFactDiscoverer(IMessageSink diagnosticMessageSink) : FactDiscoverer(diagnosticMessageSink)
{
    protected override IXunitTestCase CreateTestCase(ITestFrameworkDiscoveryOptions discoveryOptions, ITestMethod testMethod, IAttributeInfo factAttribute) =>
        new ExplainedSkipTestCase(DiagnosticMessageSink, discoveryOptions.MethodDisplayOrDefault(), discoveryOptions.MethodDisplayOptionsOrDefault(), testMethod);
}
