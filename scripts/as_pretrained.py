# One-off: turn a finished run's checkpoint into a `pretrained` one (state at QA step 0, its
# pretraining fields kept), so that `train --resume` starts a fresh QA epoch from it.
import hashlib, json, shutil, sys
src, dst = sys.argv[1], sys.argv[2]
shutil.copytree(src, dst)
state = json.load(open(f'{dst}/state.json'))
state.update(step=0, total_steps=0, losses=[], evals=[], train_seconds=0.0, examples_seen=0)
data = json.dumps(state, indent=2).encode()
open(f'{dst}/state.json', 'wb').write(data)
manifest = json.load(open(f'{dst}/manifest.json'))
manifest['files']['state.json'] = {'sha256': hashlib.sha256(data).hexdigest(), 'bytes': len(data)}
for name in list(manifest['files']):
    if name not in ('setup.json', 'state.json', 'trainable.safetensors'):
        print('dropping', name); del manifest['files'][name]
json.dump(manifest, open(f'{dst}/manifest.json', 'w'), indent=2)
print(sorted(state))
