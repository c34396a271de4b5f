"""The launch and traffic check on fake (meta) tensors (bertfast.analysis.traffic), no GPU needed: every
public op's CUDA path allocates, launches and synchronises no more than its design, a deliberately
wasteful variant is caught, and a whole BertModel training step synchronises with the host once.
Run in subprocesses with TRITON_INTERPRET=0: the launches are recorded, not run, which needs triton's
JIT functions rather than the interpreter the rest of the suite uses."""


def test_every_op_meets_its_design(run_compiled):
    stdout = run_compiled(module_args=["bertfast.analysis.traffic"])
    assert "problems: 0" in stdout
    for op in ("fused_residual_layer_norm", "fused_bias_gelu", "fused_attention_varlen", "embedding_sum"):
        assert op in stdout


def test_a_wasteful_variant_fails(run_compiled):
    """Two plausible mistakes the check must catch: buffers allocated with zeros although the kernel
    writes them (a fill launch and its bytes), and an output computed in fp32 and cast back (a launch,
    and bytes beyond the outputs)."""
    stdout = run_compiled("""
        import torch
        from bertfast.analysis import traffic

        case = next(c for c in traffic.cases() if c.name.startswith("fused_residual_layer_norm (dropout"))
        honest = traffic.check(traffic.measure(case))
        assert honest == [], honest

        empty_like = torch.empty_like
        torch.empty_like = lambda *a, **k: torch.zeros_like(*a, **k)
        try:
            zeros = traffic.check(traffic.measure(case))
        finally:
            torch.empty_like = empty_like
        assert any("zero-filled" in p for p in zeros), zeros

        import bertfast.kernels.layer_norm as kernels
        launcher = kernels.residual_layer_norm_forward
        def via_fp32(*args):
            y, mean, rstd = launcher(*args)
            return y.float().to(y.dtype), mean, rstd
        kernels.residual_layer_norm_forward = via_fp32
        try:
            cast = traffic.check(traffic.measure(case))
        finally:
            kernels.residual_layer_norm_forward = launcher
        assert any("launches" in p for p in cast) and any("beyond its outputs" in p for p in cast), cast
        print("caught", len(zeros), len(cast))
    """)
    assert "caught" in stdout


def test_a_bert_training_step_synchronises_once(run_compiled):
    """BertModel (BERT-base layer shapes, 2 layers) forward and backward, padded batch, on meta tensors:
    the one host read of the forward (mask values, padding, sizes, id ranges together), none in the
    backward; every layer's ops on the GPU path (no reference fallback)."""
    stdout = run_compiled("""
        import torch
        import bertfast
        from bertfast.analysis.trace import gpu_trace

        cfg = bertfast.BertConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                  num_hidden_layers=2)
        with torch.device("meta"):
            model = bertfast.BertModel(cfg).to(torch.bfloat16)
        model.train()
        ids = torch.empty(64, 128, dtype=torch.long, device="meta")
        mask = torch.empty(64, 128, dtype=torch.long, device="meta")
        # what the one host read returns: ids min/max, mask values ok, all real (no: pack), longest, total,
        # position 0 real in every row
        from bertfast.models.batch import host_read_stand_in
        read = host_read_stand_in([1, 30000, 1, 0, 128, 64 * 100, 1])
        with gpu_trace(host_copy=read) as forward:
            out = model(input_ids=ids, attention_mask=mask).last_hidden_state
        with gpu_trace() as backward:
            torch.autograd.grad(out.float().sum(), list(model.parameters()), allow_unused=True)
        syncs = [e.name for e in forward if e.kind == "sync"]
        assert syncs == ["copy to host"], syncs
        assert not [e for e in backward if e.kind == "sync"]
        kernels = {e.name for e in forward + backward if e.kind in ("triton", "extension")}
        for k in ("attention_fwd_kernel", "attention_bwd_dq_kernel", "residual_layer_norm_fwd_kernel",
                  "bias_gelu_bwd_kernel", "embedding_sum_forward", "embedding_pieces_kernel"):
            assert k in kernels, (k, kernels)
        print("syncs", len(syncs))
    """)
    assert "syncs 1" in stdout


def test_a_traced_step_keeps_no_tensor_alive(run_compiled):
    """A BertModel training step traced as bertfast.analysis.step traces it (out.backward, gradients into
    .grad): the backward holds no copy (autograd hands each parameter its gradient as a real step does).
    The trace's records keep meta stand-ins of their arguments, not the tensors: holding the gradients
    made AccumulateGrad clone them, 10 copies a layer that no real step makes."""
    stdout = run_compiled("""
        import torch
        import bertfast
        from bertfast.analysis.trace import gpu_trace

        cfg = bertfast.BertConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                  num_hidden_layers=1)
        with torch.device("meta"):
            model = bertfast.BertModel(cfg, add_pooling_layer=False).to(torch.bfloat16)
        model.train()
        ids = torch.empty(64, 128, dtype=torch.long, device="meta")
        from bertfast.models.batch import host_read_stand_in
        read = host_read_stand_in([1, 30000, 1, 1, 128, 64 * 128, 1])
        with gpu_trace(host_copy=read) as forward:
            out = model(input_ids=ids, attention_mask=torch.ones(64, 128, dtype=torch.long, device="meta"))
        with gpu_trace() as backward:
            out.last_hidden_state.backward(torch.empty_like(out.last_hidden_state))
        copies = [e.name for e in backward if e.name in ("copy_", "clone", "_to_copy")]
        assert not copies, copies
        # q, k and v as one matmul (models.batch.packed_qkv): 1 addmm a layer (the intermediate's bias goes
        # to the fused GELU, the attention output's and output's to their LayerNorms: nn.modules.folds_bias),
        # their gradient one tensor: no add of three input gradients (was 4 a layer), and the two residual
        # branches' gradients added in the q/k/v and intermediate input-gradient matmuls (ops/linear.py:
        # addmm_, no add left); one bias gradient summed by torch (qkv's), the folded ones in the LayerNorm
        # backward's partial sums (was 3 a layer)
        forward_names = [e.name for e in forward]
        assert forward_names.count("addmm") == 1 and forward_names.count("cat") == 1, forward_names  # (W and b)
        assert forward_names.count("randint") == 1, forward_names  # every layer's dropout seeds in one draw
        # the host facts in one kernel (kernels/host_facts.py), and no bool key mask made without padding
        assert forward_names.count("host_facts_kernel") == 1 and "ne" not in forward_names, forward_names
        backward_names = [e.name for e in backward]
        assert backward_names.count("add") == 0 and backward_names.count("addmm_") == 2, backward_names
        assert backward_names.count("sum") == 1, backward_names
        assert all(p.grad is not None for p in model.parameters())
        # the records hold stand-ins, none of the traced step's own tensors (parameters, gradients)
        own = {id(t) for p in model.parameters() for t in (p, p.grad)}
        kept = [a for e in forward + backward if e.kind == "triton" for a in (*e.args, *e.kwargs.values())
                if isinstance(a, torch.Tensor)]
        assert kept and not [a for a in kept if id(a) in own]
        print("copies", len(copies), "launches", len(backward))
    """)
    assert "copies 0" in stdout
