"""AdvUnlearn and attack-hardened HiRM on a tiny random pipeline: what each changes, its defining
property, determinism, the caller's model untouched, and hardened HiRM with one round == HiRM."""

from __future__ import annotations

import pytest
import torch

import hirm
from hirm.core.advunlearn import AdvUnlearnConfig, _Trainer, trainable_names
from hirm.core.config import Concept, HiRMConfig, PromptTarget, RandomTarget, ReadingPoint
from hirm.core.encoder import named_parameters
from hirm.core.hirm_hardened import HardenedHiRMConfig, _Hardener, _Inputs

CAT = [Concept("cat", "object", PromptTarget("dog"))]
RETAIN = ("a dog", "a red car", "a tree in a field")
TINY_ADV = AdvUnlearnConfig.cpu(
    iterations=6, warmup_iter=2, attack_step=2, adv_prompt_update_step=2, ddim_steps=3, retain_prompts=RETAIN
)


@pytest.fixture(scope="module")
def model(sd_dir):
    return hirm.load_model(sd_dir)


def _weights(model):
    return {n: p.detach().clone() for n, p in named_parameters(model.text_encoder()).items()}


def test_advunlearn_selects_the_reference_tensors(model):
    encoder = model.text_encoder()
    full = trainable_names(encoder, AdvUnlearnConfig())
    assert any(n.startswith("final_layer_norm.") for n in full) and not any("embeddings" in n for n in full)
    layer0 = trainable_names(encoder, AdvUnlearnConfig(train_method="text_encoder_layer0"))
    assert layer0 and all(n.startswith("encoder.layers.0.") for n in layer0)
    attn = trainable_names(encoder, AdvUnlearnConfig(train_method="text_encoder_layer01", component="attn"))
    assert attn and all("self_attn" in n and n.split(".")[2] in "01" for n in attn)
    with pytest.raises(ValueError, match="increasing block digits"):
        AdvUnlearnConfig(train_method="text_encoder_layer10")
    with pytest.raises(ValueError, match="attack_method must be one of"):
        AdvUnlearnConfig(attack_method="gcg")


def test_advunlearn_patch_is_deterministic_and_leaves_the_model_alone(model):
    before = _weights(model)
    unet = model.component("unet")
    unet.train()  # the caller's modes and flags come back as they were given
    unet.conv_in.weight.requires_grad_(True)
    unet.conv_out.weight.requires_grad_(False)
    one = hirm.erase(model, CAT, method="advunlearn", config=TINY_ADV, progress=False)
    assert unet.training and unet.conv_in.weight.requires_grad and not unet.conv_out.weight.requires_grad
    unet.eval()
    two = hirm.erase(model, CAT, method="advunlearn", config=TINY_ADV, progress=False)
    assert not unet.training
    after = _weights(model)
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert one.components == ("text_encoder",) and one.metadata["method"] == "advunlearn"
    assert set(one.tensors) == {f"text_encoder/{n}" for n in trainable_names(model.text_encoder(), TINY_ADV)}
    assert all(torch.equal(one.tensors[k], two.tensors[k]) for k in one.tensors)
    assert any(not torch.equal(one.tensors[k], before[k.split("/", 1)[1]]) for k in one.tensors)
    assert len(one.metadata["losses"]["text_encoder"]) == 6


def test_advunlearn_first_iterations_are_adam_on_the_papers_loss(model):
    """Restate AdvUnlearn's warm-up iterations from the paper and train-scripts/AdvUnlearn.py,
    independently of hirm's code: the latent z sampled by DDIM + CFG (start guidance) on the concept from
    the seeded generator's draws, the U-Net queried at a DDPM timestep in [t_enc, t_enc + 1) * 1000 /
    ddim_steps, the loss ||eps(z, t, E_theta(c)) - [eps(z, t, E0('')) - eta (eps(z, t, E0(c)) -
    eps(z, t, E0('')))]||^2 + w ||eps(z_r, t, E_theta(r)) - eps(z_r, t, E0(r))||^2 over retain prompts r
    drawn without replacement, and Adam's first update p - lr g / (|g| + eps) on the trained tensors.
    The retain term is zero at the first iteration (E_theta = E0), so the second iteration's loss, taken
    with the encoder after the first, checks it."""
    import copy

    from diffusers import DDIMScheduler

    settings = dict(warmup_iter=2, lr=1e-3, ddim_steps=4, negative_guidance=1.5, start_guidance=2.0,
                    retain_prompts=RETAIN, retain_batch=2, retain_loss_w=0.3, seed=5)  # fmt: skip
    one = hirm.erase(model, CAT, method="advunlearn", progress=False,
                     config=AdvUnlearnConfig(iterations=1, **settings))  # fmt: skip
    two = hirm.erase(model, CAT, method="advunlearn", progress=False,
                     config=AdvUnlearnConfig(iterations=2, **settings))  # fmt: skip
    config = AdvUnlearnConfig(**settings)
    unet, tokenizer, encoder = model.component("unet"), model.tokenizer(), model.text_encoder()

    def ids(prompts):
        return tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids  # fmt: skip

    with torch.no_grad():
        emb_0 = encoder(input_ids=ids([""])).last_hidden_state
        emb_c = encoder(input_ids=ids(["cat"])).last_hidden_state
        emb_r_all = encoder(input_ids=ids(RETAIN)).last_hidden_state
    scheduler = DDIMScheduler.from_config(model.component("scheduler").config)
    scheduler.set_timesteps(config.ddim_steps)
    gen = torch.Generator().manual_seed(config.seed)
    size = unet.config.sample_size
    unseen = list(range(len(RETAIN)))  # the retain set is drawn without replacement

    def sample(emb, t_enc):
        x = torch.randn((emb.shape[0], unet.config.in_channels, size, size), generator=gen)
        x = x * scheduler.init_noise_sigma
        empty = emb_0.expand(emb.shape[0], -1, -1)
        with torch.no_grad():
            for step_t in scheduler.timesteps[:t_enc]:
                uncond, cond = unet(torch.cat([x, x]), step_t,
                                    encoder_hidden_states=torch.cat([empty, emb])).sample.chunk(2)  # fmt: skip
                x = scheduler.step(uncond + config.start_guidance * (cond - uncond), step_t, x).prev_sample
        return x

    def iteration_loss(student):
        nonlocal unseen
        torch.randint(1, (1,), generator=gen)  # which concept (one here), drawn every iteration
        t_enc = int(torch.randint(config.ddim_steps, (1,), generator=gen))
        low, high = t_enc * 1000 // config.ddim_steps, (t_enc + 1) * 1000 // config.ddim_steps
        t = torch.randint(low, high, (1,), generator=gen)
        z = sample(emb_c, t_enc)
        with torch.no_grad():
            e_0 = unet(z, t, encoder_hidden_states=emb_0).sample
            e_c = unet(z, t, encoder_hidden_states=emb_c).sample
        loss = torch.nn.functional.mse_loss(
            unet(z, t, encoder_hidden_states=student(input_ids=ids(["cat"])).last_hidden_state).sample,
            e_0 - config.negative_guidance * (e_c - e_0),
        )
        if len(unseen) < config.retain_batch:
            unseen = list(range(len(RETAIN)))
        picks = [unseen[i] for i in torch.randperm(len(unseen), generator=gen)[: config.retain_batch]]
        unseen = [i for i in unseen if i not in picks]
        emb_r = emb_r_all[picks]
        z_r = sample(emb_r, t_enc)
        with torch.no_grad():
            e_r = unet(z_r, t.expand(len(picks)), encoder_hidden_states=emb_r).sample
        student_r = student(input_ids=ids([RETAIN[i] for i in picks])).last_hidden_state
        pred_r = unet(z_r, t.expand(len(picks)), encoder_hidden_states=student_r).sample
        return loss + config.retain_loss_w * torch.nn.functional.mse_loss(pred_r, e_r)

    student = copy.deepcopy(encoder).requires_grad_(True)
    loss = iteration_loss(student)
    loss.backward()
    assert one.metadata["losses"]["text_encoder"][0] == pytest.approx(loss.item(), rel=1e-4)
    grads = dict(student.named_parameters())
    originals = dict(encoder.named_parameters())
    assert set(one.tensors) == {f"text_encoder/{n}" for n in trainable_names(encoder, config)}
    for key, value in one.tensors.items():
        name = key.split("/", 1)[1]
        p, g = originals[name].detach(), grads[name].grad
        step = (p - value) / config.lr
        assert step.abs().max() <= 1 + 1e-3
        clear = g.abs() > 1e-3 * g.abs().max()  # Adam's first step is lr * sign(g) where |g| >> eps
        torch.testing.assert_close(step[clear], (g / (g.abs() + 1e-8))[clear], rtol=1e-3, atol=1e-3)

    after_one = hirm.apply_patch(copy.deepcopy(encoder), one, component="text_encoder")
    with torch.no_grad():
        second = iteration_loss(after_one).item()
    assert two.metadata["losses"]["text_encoder"][0] == one.metadata["losses"]["text_encoder"][0]
    assert two.metadata["losses"]["text_encoder"][1] == pytest.approx(second, rel=1e-4)


def test_advunlearn_moves_the_concept_toward_the_negatively_guided_target(model):
    """The defining property: on fixed latents, the erased encoder's noise prediction for the concept
    is closer to ESD's target eps(z, '') - eta (eps(z, c) - eps(z, '')) than the original's."""
    config = AdvUnlearnConfig.cpu(iterations=30, warmup_iter=10, attack_step=2, adv_prompt_update_step=5,
                                  ddim_steps=3, retain_prompts=RETAIN, lr=1e-3)  # fmt: skip
    patch = hirm.erase(model, CAT, method="advunlearn", config=config, progress=False)
    trainer = _Trainer(model, CAT, config)
    erased = hirm.apply_patch(trainer.trained, patch, component="text_encoder")
    emb_0, emb_c = trainer.original_embed([""]), trainer.original_embed(["cat"])
    gaps = {"original": 0.0, "erased": 0.0}
    with torch.no_grad():
        for _ in range(8):
            t_enc, t = trainer.draw_timestep()
            z = trainer.sample(emb_c, t_enc)
            e_0, e_c = trainer.eps(z, t, emb_0), trainer.eps(z, t, emb_c)
            target = e_0 - (e_c - e_0)
            gaps["original"] += (e_c - target).square().mean().item()
            gaps["erased"] += (
                (trainer.eps(z, t, erased(input_ids=trainer.ids(["cat"])).last_hidden_state) - target)
                .square()
                .mean()
                .item()
            )
    assert gaps["erased"] < 0.9 * gaps["original"], gaps


def test_advunlearn_attacker_recovers_the_concept_prediction(model):
    """The inner attacker's embeddings bring the trained encoder's prediction closer to the concept's
    than the random tokens it starts from."""
    from hirm.attacks.text import encode

    config = AdvUnlearnConfig.cpu(attack_step=15, attack_lr=1e-2, ddim_steps=3, retain_prompts=RETAIN,
                                  attack_zero_grad=True, attack_init="random")  # fmt: skip
    trainer = _Trainer(model, CAT, config)
    emb_p = trainer.original_embed(["cat"])
    trainer.generator.manual_seed(7)
    found = trainer.attack("cat", emb_p, None)
    config_zero = AdvUnlearnConfig.cpu(attack_step=1, attack_lr=1e-12, ddim_steps=3, retain_prompts=RETAIN,
                                       attack_init="random")  # fmt: skip
    start_trainer = _Trainer(model, CAT, config_zero)
    start_trainer.generator.manual_seed(7)
    start = start_trainer.attack("cat", emb_p, None)  # the same random tokens, (almost) not moved

    def gap(adv):
        trainer.generator.manual_seed(123)
        total = 0.0
        with torch.no_grad():
            for _ in range(6):
                t_enc, t = trainer.draw_timestep()
                z = trainer.sample(emb_p, t_enc)
                pred = trainer.eps(z, t, encode(trainer.trained, *trainer.adversarial_ids("cat"), adv))
                total += (pred - trainer.eps(z, t, emb_p)).square().mean().item()
        return total

    assert gap(found) < gap(start)


@pytest.mark.parametrize(
    ("concepts", "templates"),
    [
        (CAT, ()),
        # a prompt target is read in each training prompt's template, as HiRM reads it
        (CAT, ("a photo of {concept}", "{concept} in a field")),
        # several concepts x templates: every prompt keeps its own concept's target
        ([*CAT, Concept("car", "object", PromptTarget("tree"))], ("a photo of {concept}", "{concept}")),
        (
            [Concept("cat", "object", RandomTarget(scale="readout-rms", factor=2.0))],
            ("a photo of {concept}",),
        ),
    ],
)
def test_hardened_hirm_with_one_round_is_hirm(model, concepts, templates):
    base = HiRMConfig(steps=4, lr=1e-3, precision="fp32", templates=templates)
    plain = hirm.erase(model, concepts, method="hirm", config=base, progress=False)
    torch.manual_seed(99)
    expected_next = torch.rand(3)
    torch.manual_seed(99)
    hard = hirm.erase(
        model, concepts, method="hirm-adv", config=HardenedHiRMConfig(hirm=base, rounds=1), progress=False
    )
    assert torch.equal(torch.rand(3), expected_next), "hardening changed the caller's global random stream"
    assert hard.metadata["config"]["hirm"]["read"] == plain.metadata["config"]["read"]  # the family's point
    assert set(plain.tensors) == set(hard.tensors)
    for key in plain.tensors:
        torch.testing.assert_close(hard.tensors[key], plain.tensors[key], rtol=1e-6, atol=1e-7)
    assert all(".layers.0." in k for k in hard.tensors)


def test_hardening_keeps_the_attackers_input_misdirected(model):
    """After hardening, the attacker's best input lands further from the concept's original read-out
    than against plain HiRM with the same total steps."""
    base = HiRMConfig(steps=15, lr=2e-3, read=ReadingPoint(site="final"), precision="fp32")
    long = HiRMConfig(steps=45, lr=2e-3, read=ReadingPoint(site="final"), precision="fp32")
    hard_cfg = HardenedHiRMConfig(hirm=base, rounds=3, attack_steps=30, attack_lr=5e-2)
    patches = {
        "plain": hirm.erase(model, CAT, method="hirm", config=long, progress=False),
        "hardened": hirm.erase(model, CAT, method="hirm-adv", config=hard_cfg, progress=False),
    }
    gaps = {}
    for name, patch in patches.items():
        encoder = hirm.load_model(model.path.as_posix()).text_encoder()
        hirm.apply_patch(encoder, patch, component="text_encoder")
        probe = _Hardener(model.text_encoder(), model.tokenizer(), CAT, hard_cfg)
        _, recovered, _ = probe.originals()
        probe.encoder = encoder
        found = probe.attack(recovered)
        with torch.no_grad():
            gaps[name] = torch.nn.functional.mse_loss(
                found.read(encoder, probe.point).float(), recovered
            ).item()
    assert gaps["hardened"] > gaps["plain"], gaps
    assert isinstance(found, _Inputs) and found.mask is not None


def test_registered_and_validated():
    assert {"advunlearn", "hirm-adv"} <= set(hirm.methods())
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        HardenedHiRMConfig(rounds=0)
    with pytest.raises(ValueError, match="hirm-adv trains in float32"):
        HardenedHiRMConfig(hirm=HiRMConfig(precision="bf16"))
    with pytest.raises(ValueError, match="concept_weighting='balanced' is not supported"):
        HardenedHiRMConfig(hirm={"concept_weighting": "balanced"})
    assert HardenedHiRMConfig.world().hirm.read.site == "final"
    restored = HardenedHiRMConfig(
        **{**HardenedHiRMConfig().to_dict(), "hirm": HardenedHiRMConfig().to_dict()["hirm"]}
    )
    assert restored == HardenedHiRMConfig()
    assert HardenedHiRMConfig(hirm={"steps": 7}).hirm == HiRMConfig(steps=7)
